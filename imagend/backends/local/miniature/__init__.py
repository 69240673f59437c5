"""Miniature random-weight models built offline from small configs, loaded through the same
`from_pretrained` path as a real checkpoint: `imagend -make-tiny-model(s)`, the demo and the tests."""
