"""Check an OpenAI request the way every node's gateway does, without a node.

``parse_request`` is pure: it turns a request body into the parameters a worker
runs, or into an ``ApiError`` with OpenAI's error shape naming the bad field.
"""

import json

from meshp2p.api import ApiError, parse_request

good = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
request = parse_request("chat", json.dumps(good).encode())
print(request.model, request.params["max_tokens"], request.stream)

bad = {**good, "temperature": 7}
try:
    parse_request("chat", json.dumps(bad).encode())
except ApiError as error:
    print(error.status, json.dumps(error.body()))
