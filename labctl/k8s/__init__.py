"""Kubernetes API objects as labctl reads them: metadata, label selectors and manifests."""
