"""Host-side process management for the Triton server: children tied to their launcher,
and what /proc says about processes, ports and shared memory."""
