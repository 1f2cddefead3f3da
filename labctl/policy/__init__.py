"""NetworkPolicy: the model, the reference evaluator, the compiler to the dataplane, apply and
checks."""
