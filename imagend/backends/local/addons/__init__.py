"""Add-ons loaded onto a family's pipeline per batch, as diffusers' `loaders/`: LoRA, IP-Adapter,
and the upscaler."""
