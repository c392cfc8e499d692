"""Built-in backend plugins, each registered through the `gateway.plugins` entry-point group."""
