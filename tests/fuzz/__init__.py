"""Fuzzing of every parser that reads untrusted input (issue 4, item 2).

* :mod:`tests.fuzz.targets` -- the targets, their valid-input generators and their oracles (what "accepted" and
  "rejected with a specific error" mean for each).
* :mod:`tests.fuzz.mutate` -- structure-aware mutation of bytes and text, and random chunking of byte streams.
* ``test_fuzz_*.py`` -- quick hypothesis runs for the default suite (a few hundred examples per target).
* :mod:`tests.fuzz.run` -- the dedicated run: ``python -m tests.fuzz.run --inputs 1000000``.
"""
