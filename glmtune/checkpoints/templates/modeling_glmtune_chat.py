"""ChatGLM-style `model.chat()` on the exported model's class; written into each export by `glmtune export`.

`glmtune export` replaces the BaseModel import below with the exported model's own class. Message texts are
encoded with special-token splitting on, as glmtune's training renderer does, so a "<|assistant|>" typed by a user
stays text and cannot open a role; only the chat template's own special tokens are special.
"""

import re

import torch
from transformers import PreTrainedModel as BaseModel

_CONTENT = "\ue000{}\ue000"  # a private-use marker for message i while the chat template renders the frame
_CONTENT_MARK = re.compile("\ue000(\\d+)\ue000")


class GlmtuneChatModel(BaseModel):
    def chat(self, tokenizer, query, history=None, role="user", max_new_tokens=256, **generate_kwargs):
        """Answer `query` after `history` (dicts with role/content, or (query, response) pairs); returns
        (response, history)."""
        messages = []
        for turn in history or []:
            if isinstance(turn, dict):
                messages.append({"role": turn["role"], "content": turn["content"]})
            else:
                messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
        messages.append({"role": role, "content": query})
        input_ids = torch.tensor([chat_prompt_ids(tokenizer, messages)], device=self.device)
        output = self.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            **generate_kwargs,
        )
        response = tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip()
        return response, messages + [{"role": "assistant", "content": response}]


def chat_prompt_ids(tokenizer, messages):
    """The chat template's prompt ids, with each message's content encoded as plain text."""
    marked = [{**message, "content": _CONTENT.format(i)} for i, message in enumerate(messages)]
    frame = tokenizer.apply_chat_template(marked, add_generation_prompt=True, tokenize=False)
    specials = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    special = re.compile(
        "|".join(re.escape(token) for token in sorted(specials, key=len, reverse=True)) or "(?!)"
    )
    ids, text = [], ""
    for index, part in enumerate(_CONTENT_MARK.split(frame)):
        if index % 2:  # a message's content: text, whatever it contains
            text += messages[int(part)]["content"]
            continue
        at = 0
        for match in special.finditer(part):  # the frame's special tokens end the text before them
            text += part[at : match.start()]
            ids += _text_ids(tokenizer, text) + [tokenizer.convert_tokens_to_ids(match.group())]
            text, at = "", match.end()
        text += part[at:]
    return ids + _text_ids(tokenizer, text)


def _text_ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True) if text else []
