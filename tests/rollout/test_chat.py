import pytest

from rollout.chat import ChatFormat, ChatTemplateError, format_tool_call, parse_action
from rollout.demos import expert_trajectory
from rollout.envs import get_env
from rollout.types import ToolCall


def test_format_and_parse_tool_call_round_trip():
    call = ToolCall("search", {"query": "Tavon city", "k": 3})
    parsed = parse_action("thinking...\n" + format_tool_call(call))
    assert parsed.error is None and parsed.call == call


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("just an answer", "no tool call"),
        ("<tool_call>\n{not json}\n</tool_call>", "not valid JSON"),
        ('<tool_call>\n["search"]\n</tool_call>', "JSON object"),
        ('<tool_call>\n{"name": "open", "arguments": "Tavon"}\n</tool_call>', '"arguments" must be'),
        (format_tool_call(ToolCall("a", {})) + format_tool_call(ToolCall("b", {})), "exactly one"),
    ],
)
def test_malformed_actions_are_reported_not_raised(text, fragment):
    parsed = parse_action(text)
    assert parsed.call is None and fragment in parsed.error


def test_expert_episode_tokens_decode_to_the_chat_template_rendering(tiny_tokenizer):
    """Delta tokenization reproduces what the template renders for the same conversation."""
    env_cls = get_env("kbsearch")
    task = env_cls.generate_task(seed=3, difficulty=2)
    chat = ChatFormat(tiny_tokenizer, env_cls.tools)
    traj = expert_trajectory(chat, task)

    env = env_cls(task)
    messages = [{"role": "user", "content": env.reset()}]
    for call in env_cls.expert_solution(task):
        messages.append({"role": "assistant", "content": "",
                         "tool_calls": [{"type": "function", "function": {"name": call.name,
                                                                          "arguments": call.arguments}}]})
        result = env.step(call)
        if result.done:
            break
        messages.append({"role": "tool", "content": result.observation})
    rendered = tiny_tokenizer.apply_chat_template(messages, tools=chat.tools, tokenize=False)
    decoded = tiny_tokenizer.decode(traj.token_ids, skip_special_tokens=False)
    # The template closes the last assistant turn with "<|im_end|>\n"; the episode ends at <|im_end|>.
    assert decoded == rendered.removesuffix("\n")
    assert traj.success


def test_loss_mask_covers_exactly_the_assistant_turns(tiny_tokenizer):
    env_cls = get_env("kbsearch")
    task = env_cls.generate_task(seed=5, difficulty=3)
    chat = ChatFormat(tiny_tokenizer, env_cls.tools)
    traj = expert_trajectory(chat, task)
    calls = env_cls.expert_solution(task)
    masked = [i for i, m in enumerate(traj.loss_mask) if m]
    spans = [i for turn in traj.turns for i in range(turn.action_start, turn.action_end)]
    assert masked == spans
    for turn, call in zip(traj.turns, calls, strict=True):
        assert traj.token_ids[turn.action_end - 1] == chat.eos_id
        assert chat.decode(traj.token_ids[turn.action_start:turn.action_end]) == format_tool_call(call)


def test_template_without_eos_is_rejected():
    class NoEos:
        eos_token_id = None

    with pytest.raises(ChatTemplateError, match="eos"):
        ChatFormat(NoEos(), [])
