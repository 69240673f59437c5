"""GPU speed options for SDXL (IMAGEND_FUSE_QKV, IMAGEND_COMPILE_*, IMAGEND_STEP_CACHE,
IMAGEND_FAST_PRESET): the settings, applying them to a pipeline, and the step cache."""
