"""Test helpers shipped with imagend, so users can try a backend without an account.

`imagend.testing.fusionbrain_fake`: a local HTTP server that speaks the Fusion Brain
(Kandinsky) key API, both generations, with injectable faults.
"""
