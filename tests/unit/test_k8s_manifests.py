"""Unit tests for labctl.k8s.manifests: reading documents and all-or-nothing parsing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from labctl.k8s.manifests import KINDS, Document, ManifestError, parse_objects, read_documents
from labctl.policy.model import NetworkPolicy

POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {name}
  namespace: x
spec:
  podSelector: {{}}
"""


def policy(name: str) -> str:
    return POLICY.format(name=name)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def parse_text(text: str) -> list[NetworkPolicy]:
    objs = parse_objects(read_documents("-", io.StringIO(text)))
    assert all(isinstance(o, NetworkPolicy) for o in objs)
    return objs  # type: ignore[return-value]


def test_networkpolicy_is_registered() -> None:
    assert KINDS[("networking.k8s.io/v1", "NetworkPolicy")] is NetworkPolicy


def test_multi_document_file_and_empty_documents(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "---\n" + policy("a") + "---\n---\n" + policy("b") + "---\n")
    docs = read_documents(str(path))
    # The empty document between the two still counts for numbering; the trailing one is gone.
    assert [(d.source, d.index) for d in docs] == [(str(path), 1), (str(path), 3)]
    assert [o.key for o in parse_objects(docs)] == ["x/a", "x/b"]  # type: ignore[attr-defined]


def test_only_empty_documents_give_nothing(tmp_path: Path) -> None:
    assert read_documents(str(write(tmp_path, "e.yaml", "---\n# nothing\n---\n"))) == []


def test_directory_reads_manifest_files_sorted_not_recursive(tmp_path: Path) -> None:
    write(tmp_path, "b.yml", policy("b"))
    write(tmp_path, "a.yaml", policy("a"))
    write(
        tmp_path,
        "c.json",
        '{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",'
        ' "metadata": {"name": "c"}, "spec": {"podSelector": {}}}',
    )
    write(tmp_path, "notes.txt", "not a manifest")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "d.yaml", policy("d"))
    objs = parse_objects(read_documents(str(tmp_path)))
    assert [o.key for o in objs] == ["x/a", "x/b", "default/c"]  # type: ignore[attr-defined]


def test_directory_without_manifests(tmp_path: Path) -> None:
    write(tmp_path, "notes.txt", "x")
    with pytest.raises(ManifestError, match=r"no \*\.yaml, \*\.yml or \*\.json files"):
        read_documents(str(tmp_path))


def test_stdin() -> None:
    docs = read_documents("-", io.StringIO(policy("a")))
    assert docs == [Document("<stdin>", 1, docs[0].data)]
    assert parse_text(policy("a"))[0].key == "x/a"


def test_list_is_expanded() -> None:
    text = "apiVersion: v1\nkind: List\nmetadata: {resourceVersion: ''}\nitems:\n"
    for name in ("a", "b"):
        text += "- " + policy(name).replace("\n", "\n  ").rstrip() + "\n"
    docs = read_documents("-", io.StringIO(text))
    assert [(d.index, d.item) for d in docs] == [(1, 0), (1, 1)]
    assert [o.key for o in parse_objects(docs)] == ["x/a", "x/b"]  # type: ignore[attr-defined]


def test_list_items_must_be_a_list() -> None:
    with pytest.raises(ManifestError, match=r"items: must be a list"):
        read_documents("-", io.StringIO("apiVersion: v1\nkind: List\nitems: {}\n"))


def test_list_item_error_names_the_item() -> None:
    text = "apiVersion: v1\nkind: List\nitems:\n- " + policy("A").replace("\n", "\n  ")
    with pytest.raises(ManifestError, match=r"document 1, items\[0\], NetworkPolicy x/A\)"):
        parse_text(text)


def test_syntax_error_names_line_and_document(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", policy("a") + "---\nkind: [unclosed\nfoo: bar\n")
    with pytest.raises(ManifestError) as e:
        read_documents(str(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}:") and "(document 2)" in msg and "not valid YAML" in msg
    assert "\n" not in msg


def test_syntax_error_line_number() -> None:
    with pytest.raises(ManifestError, match=r"^<stdin>:3 \(document 1\): not valid YAML"):
        read_documents("-", io.StringIO("a: 1\nb: 2\n c: 3\n"))


def test_duplicate_key_rejected() -> None:
    text = policy("a") + "metadata:\n  name: b\n"
    with pytest.raises(ManifestError, match=r"duplicate key 'metadata' \(first defined on line 3"):
        read_documents("-", io.StringIO(text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nope\.yaml: no such file or directory"):
        read_documents(str(tmp_path / "nope.yaml"))


def test_not_a_mapping() -> None:
    with pytest.raises(ManifestError, match=r"\(document 1\): not an object"):
        parse_text("- a\n- b\n")


def test_missing_kind() -> None:
    with pytest.raises(ManifestError, match=r"\(document 1\): kind: required field is missing"):
        parse_text("apiVersion: v1\nmetadata: {name: a}\n")


def test_unknown_kind_names_what_is_supported() -> None:
    with pytest.raises(ManifestError) as e:
        parse_text("apiVersion: v1\nkind: Foo\nmetadata: {name: a}\n")
    supported = ", ".join(f"{api} {kind}" for api, kind in sorted(KINDS))
    assert "networking.k8s.io/v1 NetworkPolicy" in supported
    assert str(e.value) == (
        f'<stdin> (document 1): kind "Foo" (apiVersion v1) is not supported; '
        f"labctl applies: {supported}"
    )


def test_wrong_api_version_for_networkpolicy_names_the_right_one() -> None:
    text = policy("a").replace("networking.k8s.io/v1", "extensions/v1beta1")
    with pytest.raises(ManifestError, match=r"apiVersion: networking\.k8s\.io/v1$"):
        parse_text(text)


def test_duplicate_object_rejected() -> None:
    with pytest.raises(ManifestError) as e:
        parse_text(policy("a") + "---\n" + policy("a"))
    msg = str(e.value)
    assert msg.startswith("<stdin> (document 2, NetworkPolicy x/a): metadata.name: same object")
    assert "(document 1)" in msg


def test_same_name_in_other_namespace_is_fine() -> None:
    other = policy("a").replace("namespace: x", "namespace: y")
    assert [p.key for p in parse_text(policy("a") + "---\n" + other)] == ["x/a", "y/a"]


def test_one_invalid_document_fails_all(tmp_path: Path) -> None:
    bad = (
        policy("c")
        + "  ingress:\n  - from:\n    - podSelector: {}\n    - ipBlock: {cidr: 10.0.0.1/8}\n"
    )
    path = write(tmp_path, "p.yaml", policy("a") + "---\n" + policy("b") + "---\n" + bad)
    docs = read_documents(str(path))
    with pytest.raises(ManifestError) as e:
        parse_objects(docs)
    assert str(e.value).startswith(
        f"{path} (document 3, NetworkPolicy x/c): spec.ingress[0].from[1].ipBlock.cidr: "
        "'10.0.0.1/8' has host bits set; write the network 10.0.0.0/8"
    )


def test_unknown_field_lists_the_fields_there() -> None:
    text = policy("a") + "  ingress:\n  - form: []\n"
    with pytest.raises(
        ManifestError, match=r"spec\.ingress\[0\]\.form: unknown field; .*from, ports"
    ):
        parse_text(text)


def test_type_errors_say_how_to_write_it() -> None:
    # YAML 1.1 reads an unquoted yes/on as a boolean, for values and keys alike.
    text = policy("a").replace("podSelector: {}", "podSelector: {matchLabels: {app: yes}}")
    with pytest.raises(ManifestError, match=r"matchLabels\.app: True is not a string; quote it"):
        parse_text(text)
    text = policy("a").replace("podSelector: {}", "podSelector: {matchLabels: {on: x}}")
    with pytest.raises(ManifestError, match=r"matchLabels: key True is not a string; quote it"):
        parse_text(text)
    text = policy("a").replace("podSelector: {}", "podSelector: {}\n  policyTypes: Ingress")
    with pytest.raises(ManifestError, match=r"spec\.policyTypes: must be a list"):
        parse_text(text)


def test_get_output_with_server_fields_reapplies() -> None:
    policy_a = parse_text(policy("a"))[0]
    text = (
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n"
        "  name: a\n  namespace: x\n  uid: 0b4c\n  resourceVersion: '12'\n  generation: 1\n"
        "  creationTimestamp: '2024-05-01T10:00:00Z'\nspec:\n  podSelector: {}\n"
        "  policyTypes: [Ingress]\n"
    )
    again = parse_text(text)[0]
    assert again.manifest()["spec"] == policy_a.manifest()["spec"]
    # The output of manifest() itself parses back to the same object.
    assert parse_objects([Document("m", 1, again.manifest())])[0] == again
