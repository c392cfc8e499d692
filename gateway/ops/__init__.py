"""Running the gateway as a service: hot config reload and draining on shutdown."""
