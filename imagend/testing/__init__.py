"""Test helpers shipped with imagend, so users can try a backend without an account.

`imagend.testing.fusionbrain_fake`: a local HTTP server that speaks the Fusion Brain
(Kandinsky) key API, both generations, with injectable faults.
`imagend.backends.local.miniature.sdxl`: a miniature random-weights SDXL pipeline (it makes noise) for
the tests, the benchmarks, the demo and `imagend -make-tiny-model`.
"""
