"""The diffusers families the local backend drives, one module each as diffusers' `pipelines/<family>/`:
its rules (sizes, schedulers, negative prompts) and its prompt encoder."""
