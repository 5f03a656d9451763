"""The Triton Python-backend side: one shared adapter, a thin model class per handler.

Modules that import `triton_python_backend_utils` (adapter, models) only load inside
Triton's Python backend stub; `config`, `contract` and `tensors` load anywhere. What runs on
the host (starting the server, watching it) is in `mosaic_serving.launcher`.

Imported inside a backend process, this package first spawns the process's second heartbeat
(`heartbeat.spawn_in_stub`), before the model's module imports anything else.
"""

from mosaic_serving.triton import heartbeat

heartbeat.spawn_in_stub()
