"""GPU speed options for SDXL (IMAGEND_FUSE_QKV, IMAGEND_CHANNELS_LAST, IMAGEND_COMPILE_*, IMAGEND_STEP_CACHE,
IMAGEND_FAST_PRESET): `settings` (read from the environment, no torch), `apply` (onto a loaded
pipeline) and `step_cache` (DeepCache). docs/gpu_speed.md describes each."""
