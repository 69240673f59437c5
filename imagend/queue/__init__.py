"""The queue's loop: the pacer that runs every pass, the daemon, the generator and processor passes,
validation of a claimed row, finishing it, publishing its image, and the wake-up listener."""
