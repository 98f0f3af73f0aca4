"""steerserve's steering core (no FastAPI here), in two sides.

API process (imported by `server/` and `clients/`): `spec` (terms, validation, hash), `vectors` and
`vector_formats`, `store/` (the registry), `extract/` (extraction jobs), `experiments` (A/B arms and tallies),
`activations` (capture requests), `reflection` (reflection keywords), `admission` and `slots` (the one ledger of
configs to slots), `engine` (the engine factory and its RPCs), `fetch`, `settings`, `errors` (one hierarchy).

Workers (vLLM's processes, loaded by the general plugin): `worker/` (the plugin's `register`, runner hooks,
layer patch, fixed tables, ops and kernels, capture buffers, RPC methods). `config` (table sizes) is shared.
The API side reaches the worker side only through vLLM's RPCs, never by import; `worker/` imports nothing from
the API side but `config`, `errors` and `spec` constants.
"""

__version__ = "0.1.0"
