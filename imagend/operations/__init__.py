"""Operations: metrics, health, systemd notification and the `-status` report."""
