"""Miniature random-weight models built offline from small configs, loaded through the same
`from_pretrained` path as a real checkpoint: `imagend -make-tiny-model(s)`, the demo, the benchmarks and
the tests. They make noise; production code never imports them.

- `parts`: what they are all built from (seed, tokenizers, CLIP and T5 encoders, VAE), defined once.
- `sdxl`: the miniature SDXL pipeline (`write_tiny_model`).
- `families`: the miniature FLUX.1, SD3 and Kandinsky 3 pipelines (`write_tiny_pipeline`).
- `extras`: the miniature LoRAs, IP-Adapter and x4 upscaler, and `write_tiny_models` (all of them).
"""
