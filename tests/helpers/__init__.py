"""What the tests run besides themselves: a naive operator to compare with, probes loaded into
training runs, the worker a multi-node test starts."""
