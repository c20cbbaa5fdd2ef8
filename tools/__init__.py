"""Developer and host tools the runtime never imports: host check, Compose check, demo."""
