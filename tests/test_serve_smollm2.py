"""The server with the embedded SmolLM2-135M as the LiMBeR LM (a real tokenizer and real words): chat
completions stream token by token and the streamed text equals the whole reply; the reply equals the
Python API's answer. Needs the embedded assets (`make setup`); the projector is random.
"""

from __future__ import annotations

import base64
import json

import pytest
import torch

from helpers.serve_helpers import png_bytes


@pytest.mark.assets
def test_chat_streams_smollm2_tokens_equal_to_the_reply(serve_models, tmp_path):
    from fastapi.testclient import TestClient

    from vlbridge.errors import AssetMissingError
    from vlbridge.models.lm import default_lm_path
    from vlbridge.models.limber import Limber, LimberConfig
    from vlbridge.serve import ServeConfig, create_app, load_services

    try:
        lm_dir = default_lm_path()
    except AssetMissingError as err:
        pytest.skip(str(err))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    models, _ = serve_models
    model = Limber.build(LimberConfig(encoder=f"clip:{models.clip}", lm=str(lm_dir), num_prefix_tokens=2))
    folder = model.save(tmp_path / "limber-smollm2")
    services = load_services(folder)
    image = "data:image/png;base64," + base64.b64encode(png_bytes(2)).decode()
    request = {"max_tokens": 12, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "A picture of"}]}]}
    with TestClient(create_app(services, ServeConfig())) as client:
        whole = client.post("/v1/chat/completions", json=request).json()["choices"][0]["message"]["content"]
        with client.stream("POST", "/v1/chat/completions", json={**request, "stream": True}) as response:
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    pieces = [json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[1:-2]]
    assert events[-1] == "[DONE]" and len([p for p in pieces if p]) > 1
    assert "".join(pieces).strip() == whole
    assert whole == services.limber.caption(png_bytes(2), prompt="A picture of", max_new_tokens=12)
