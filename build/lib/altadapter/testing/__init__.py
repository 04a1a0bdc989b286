"""Testing support: AltDiffusion-architecture models of any size, built offline (`tiny_models`).

Not used by the library itself; the tests, the benchmarks and the demo's toy base build on it.
"""
