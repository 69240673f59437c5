"""The storyboard writer: a video row with only an idea (`scenes` NULL, the idea in `prompt`) asks an
OpenAI-compatible chat endpoint (IMAGEND_SCRIPT_URL: Ollama, vLLM, llama.cpp's server, OpenAI) for the
storyboard as a JSON object, and checks it as a producer's own (storyboard.py). Every way the answer can
be wrong is a readable error in the row: garbage, not JSON, the wrong shape, a timeout."""

from __future__ import annotations

import json
from typing import Any

import httpx

from imagend.errors import BadInput, RetryableError
from imagend.video.storyboard import MOTIONS, TRANSITIONS, Scene, check_storyboard

ANSWER_MAX_CHARS = 200_000
ECHO_CHARS = 120

SYSTEM_PROMPT = (
    "You write storyboards for short videos made of still images with slow camera motion and narration. "
    "Answer with one JSON object and nothing else: "
    '{"scenes": [{"prompt": "...", "seconds": 4, "narration": "...", "motion": "zoom_in", '
    '"transition": "crossfade"}, ...]}. '
    "prompt: a vivid description of one picture for an image generator (under 300 characters). "
    "seconds: how long the scene lasts (2 to 10). narration: one or two short spoken sentences, or omit it. "
    f"motion: one of {', '.join(MOTIONS)}. transition: one of {', '.join(TRANSITIONS)}. "
    "The scenes' seconds add up to the length asked for."
)


def _echo(text: str) -> str:
    return repr(text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "…")


def write_storyboard(idea: str, *, url: str, model: str, api_key: str | None, timeout_seconds: float,
                     max_seconds: float, target_seconds: float = 30.0) -> list[Scene]:
    """Ask the chat endpoint at `url` (an OpenAI-compatible base, `…/v1`) for a storyboard of `idea`."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"A video of about {min(target_seconds, max_seconds):g} seconds: {idea}"},
        ],
        "response_format": {"type": "json_object"},
        "temperature": 0.7,
    }
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    where = "IMAGEND_SCRIPT_URL"
    try:
        response = httpx.post(f"{url}/chat/completions", json=body, headers=headers, timeout=timeout_seconds)
    except httpx.TimeoutException:
        raise RetryableError(f"the script endpoint ({where}) did not answer within {timeout_seconds:g} s "
                             "(IMAGEND_SCRIPT_TIMEOUT)") from None
    except httpx.HTTPError as exc:
        raise RetryableError(f"the script endpoint ({where}) cannot be reached: {type(exc).__name__}") from None
    if response.status_code >= 500 or response.status_code == 429:
        raise RetryableError(f"the script endpoint ({where}) answered HTTP {response.status_code}")
    if response.status_code != 200:
        raise BadInput(f"the script endpoint ({where}) refused the request: HTTP {response.status_code} "
                       f"{_echo(response.text)}")
    if len(response.text) > ANSWER_MAX_CHARS:
        raise BadInput(f"the script endpoint's answer is {len(response.text):,} characters; at most "
                       f"{ANSWER_MAX_CHARS:,}")
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise BadInput(f"the script endpoint's answer is not a chat completion: {_echo(response.text)}") from None
    if not isinstance(content, str):
        raise BadInput("the script endpoint's answer has no text content")
    text = content.strip()
    if text.startswith("```"):  # a model that fences its JSON anyway
        text = text.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise BadInput(f"the script endpoint's storyboard is not JSON: {_echo(text)}") from None
    try:
        return check_storyboard(value, max_seconds=max_seconds)
    except BadInput as exc:
        raise BadInput(f"the script endpoint's storyboard is wrong: {exc}") from None
