"""The OpenAI-compatible HTTP API (FastAPI on uvicorn, inside the daemon's event loop):
`/v1/models`, `/v1/chat/completions`, `/v1/completions`, `/health`, `/metrics`.
A request is validated once here (its OpenAI shape by pydantic, its ranges by the control
protocol's schema) and then runs exactly like a `generate` on the control socket."""
