"""Simulations of the algorithm without a video model: tempsamp.simulation.toy, the seconds-fast toy
grounding task that benchmarks/bench_toy.py runs (not part of training, eval or the public API)."""
