"""The echo fault: an answer that quotes the request, token included, the way a misbehaving
gateway, a debug page or a provider's error text may.

Set with ``faults.echo_next`` (a list of forms, one used per archive call, in order): the call
answers 400, text/plain, ``echo (<form>): <the request's secret-bearing part, in that form>``.
The secret-bearing part is the request path for GREEN-API (its token is a path segment) and the
``Token`` header for Wassenger. Forms:

    raw            as received
    percent        every byte percent-encoded, upper-case hex (%2F%77...)
    percent_lower  the same with lower-case hex (%2f%77...)
    json           a JSON string as PHP's json_encode writes it ("\\/waInstance...\\/")
    basic          Authorization: Basic base64("{account id}:{token}")
    bearer         Authorization: Bearer {token}

It exists so tests can show that no form of a token an answer may carry reaches a dead letter,
a result or a log.
"""

from __future__ import annotations

import base64
import json

from worker.sandbox.simulator.answers import Answer, text

ECHO_FORMS = ("raw", "percent", "percent_lower", "json", "basic", "bearer")


def echo(form: str, secret_bearing: str, account_id: str, token: str) -> Answer:
    if form == "percent":
        shown = "".join(f"%{byte:02X}" for byte in secret_bearing.encode())
    elif form == "percent_lower":
        shown = "".join(f"%{byte:02x}" for byte in secret_bearing.encode())
    elif form == "json":
        shown = json.dumps(secret_bearing).replace("/", "\\/")
    elif form == "basic":
        credentials = base64.b64encode(f"{account_id}:{token}".encode()).decode()
        shown = f"Authorization: Basic {credentials}"
    elif form == "bearer":
        shown = f"Authorization: Bearer {token}"
    else:
        shown = secret_bearing
    return text(400, f"echo ({form}): {shown}")
