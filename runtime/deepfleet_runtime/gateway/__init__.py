"""The internal gateway: TLS 1.3, API keys, forwarding to the runtime (run by `deepfleet-runtime gateway`)."""
