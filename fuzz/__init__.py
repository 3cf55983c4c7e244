"""Fuzzing torchcaffe's readers: every file is untrusted input.

One target per reader (``targets.py``). Each target takes bytes and must either load them or
raise one of torchcaffe's documented errors (``torchcaffe.errors.CaffeError`` and subclasses):
any other exception, an input that takes longer than the per-input deadline, or a crash of the
interpreter is a failure. The same targets run under two engines:

* hypothesis (``properties.py``): seeds from ``corpus/<target>/`` mutated by strategies, or
  structured inputs; a short run is part of ``make test`` (``tests/robustness``);
* atheris (``run.py``, coverage-guided libFuzzer): ``make fuzz`` runs every target for
  ``FUZZ_SECONDS`` seconds and prints the inputs tried and the failures.

Failing inputs are saved to ``regressions/<target>/`` and replayed by
``tests/robustness/test_fuzz_regressions.py`` together with the seed corpus.
See ``docs/robustness.md``.
"""
