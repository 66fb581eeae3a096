"""`lmlab serve`: an OpenAI-compatible HTTP server over the engine, with continuous batching.

cli.py        the `lmlab serve` command (load a checkpoint, bind, run uvicorn)
app.py        the FastAPI app: routes, API key, body limit, error handlers
schemas.py    request bodies (OpenAI fields + KV extension fields), validated
params.py     a request -> token prompts + GenerationConfig (context caps, chat template)
scheduler.py  the one thread that owns the model and drives the engine's RunningBatch
endpoints.py  completions / chat: submit, wait or stream, cancel on disconnect
responses.py  engine results -> OpenAI response objects and SSE chunks
metrics.py    Prometheus metrics
errors.py     errors in OpenAI's shape
"""
