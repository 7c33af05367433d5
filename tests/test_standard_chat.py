"""LangChain standard tests (langchain-tests) for RecipeEditedChatModel.

* ``ChatModelUnitTests`` on tiny random models (fast).
* ``ChatModelIntegrationTests`` on the real default LLM (SmolLM2-135M-Instruct) with an
  untrained RECIPE editor and an ephemeral store holding one edit: the suite checks the
  LangChain contract (messages, streaming, batching, usage metadata, stop), which does
  not depend on training. Marked ``integration``.

Unsupported features (tool calling, structured output, JSON mode, images, audio, PDFs,
model override) are switched off with the suites' own properties; no standard test is
overridden.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from recipe_chain.chat_models import RecipeEditedChatModel
from tiny_store import make_store, shared_models

pytestmark = pytest.mark.anyio  # runs the suites' async tests (on asyncio); sync tests are unaffected

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class _LocalChatModelFeatures:
    """What a local text-only chat model without tool calling supports."""

    @property
    def chat_model_class(self) -> type[RecipeEditedChatModel]:
        return RecipeEditedChatModel

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # one in-process LLM; a per-call model name cannot switch it


@functools.lru_cache(maxsize=1)
def _tiny_params() -> dict[str, Any]:
    models = shared_models()
    tokenizer = copy.deepcopy(models.tokenizer)
    tokenizer.chat_template = CHATML
    store = make_store(models.editor, n_edits=2)
    return {"llm": models.llm, "tokenizer": tokenizer, "store": store}


class TestRecipeChatModelUnit(_LocalChatModelFeatures, ChatModelUnitTests):
    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # The unit suite adds api_key="test" for hosted models. A local model has no API
        # key and rejects unknown fields (typos raise), so only that entry is dropped;
        # temperature, max_tokens, timeout, stop and max_retries are all still passed.
        params = dict(super().standard_chat_model_params)
        assert params.pop("api_key") == "test"
        return params

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return dict(_tiny_params())


@functools.lru_cache(maxsize=1)
def _real_params() -> dict[str, Any]:
    from recipe_chain.editor import RecipeEditor
    from recipe_chain.loading import load_default_llm
    from recipe_chain.store import RecipeKnowledgeStore

    llm, tokenizer = load_default_llm()
    editor = RecipeEditor.from_backbone(llm)  # untrained heads: enough for API tests
    store = RecipeKnowledgeStore(editor, ephemeral=True, namespace="standard-chat-tests")
    store.clear()
    store.add_edit("The mother tongue of Danielle Darrieux is", "English", subject="Danielle Darrieux")
    return {"llm": llm, "tokenizer": tokenizer, "store": store, "editor": editor, "max_new_tokens": 12}


@pytest.mark.integration
class TestRecipeChatModelIntegration(_LocalChatModelFeatures, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return dict(_real_params())
