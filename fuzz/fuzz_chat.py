"""Fuzz the chat door: a JSON body through the typed body and every request check, including the
JSON-Schema -> grammar build and its checker (edge/chat/grammar.py) and the tools' checks and call grammar
(edge/chat/tools.py). Only BadRequest may come out.

    python fuzz/fuzz_chat.py -runs=1000000      # seeds: fuzz/corpus/chat
"""

import atheris

from _common import main

with atheris.instrument_imports(include=["edge"]):
    from edge.errors import BadRequest
    from edge.server.bodies import parse_model
    from edge.server.chat_routes import _messages, _request, _schema, _tools
    from edge.server.schemas import ChatCompletionBody


def test_one_input(data: bytes) -> None:
    try:
        body = parse_model(data, ChatCompletionBody)
        req = _request(body, _messages(body), _schema(body), tools=_tools(body),
                       tool_choice=body.tool_choice).check()  # as Runtime.chat_job checks it
    except BadRequest:
        return
    assert req.json_schema is None or isinstance(req.grammar, str)
    assert req.toolset is None or req.toolset.choice not in ("required", "function") or \
        isinstance(req.toolset.grammar, str)


if __name__ == "__main__":
    main(test_one_input, "chat")
