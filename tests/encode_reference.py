"""The request line encoders of main at 4aaf651, frozen: the reference the encoders are held to.

Copied verbatim (methods made functions of the provider) so that a change of the library's
encoders that changes one byte of a request line fails ``tests/test_encode_bytes.py``.
Only the encoders are frozen; the constant parts they take from the provider
(``request_params_constant``, ``request_body_constant``, ``generation_config``) are the
library's own.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from batchata_df.providers.base import RequestSpec, history_messages, json_string

_CACHE_MARK = '"cache_control":{"type":"ephemeral"}'
_PROMPT_BLOCK = '},{"type":"text","text":'
ENDPOINT = "/v1/chat/completions"


def _model_of(jobs: pl.DataFrame) -> str | None:
    return str(jobs.get_column("model")[0]) if jobs.height else None


def anthropic_encode(self: Any, jobs: pl.DataFrame, spec: RequestSpec) -> pl.Series:
    tail = self.request_params_constant(
        spec, str(jobs.get_column("model")[0]) if jobs.height else None
    )
    user_content: pl.Expr = (
        pl.col("content_json") if "content_json" in jobs.columns else json_string(pl.col("prompt"))
    )
    system_text = pl.col("system")
    # Changed on purpose (941e794): a Claude model without structured output gets the schema
    # in the system prompt as citations do, without asking to cite.
    model = str(jobs.get_column("model")[0]) if jobs.height else None
    if spec.schema_in_prompt("anthropic", model) and spec.schema.json_schema is not None:
        from batchata_df.citations import instruction

        ours = pl.lit(instruction(spec.schema.json_schema, cite=spec.citations))
        theirs = pl.concat_str([pl.lit("\n\n"), pl.col("system")]).fill_null("")
        system_text = ours + theirs
    system = (
        pl.when(system_text.is_not_null())
        .then(pl.concat_str([pl.lit(',"system":'), json_string(system_text)]))
        .otherwise(pl.lit(""))
    )
    if "cache_split" in jobs.columns:
        system = (
            pl.when(pl.col("cache_system") & system_text.is_not_null())
            .then(
                pl.concat_str(
                    [
                        pl.lit(',"system":[{"type":"text","text":'),
                        json_string(system_text),
                        pl.lit(f",{_CACHE_MARK}}}]"),
                    ]
                )
            )
            .otherwise(system)
        )
        if "content_json" in jobs.columns and "cache_files" in jobs.columns:
            # The prompt is the one top-level text block, after the files: the last
            # file block ends right before it (quotes inside JSON strings are escaped,
            # so this sequence cannot occur inside a value).
            user_content = (
                pl.when(pl.col("cache_files"))
                .then(
                    user_content.str.replace(
                        _PROMPT_BLOCK, f",{_CACHE_MARK}}}" + _PROMPT_BLOCK[1:], literal=True
                    )
                )
                .otherwise(user_content)
            )
        if "content_json" not in jobs.columns:
            split = pl.col("cache_split")
            # Changed on purpose (session 16): a split at the prompt's end (a prompt that is
            # all shared prefix) is one marked block, not a marked block and an empty one
            # (which Anthropic refuses).
            user_content = (
                pl.when(split.is_not_null() & (split >= pl.col("prompt").str.len_chars()))
                .then(
                    pl.concat_str(
                        [
                            pl.lit('[{"type":"text","text":'),
                            json_string(pl.col("prompt")),
                            pl.lit(f",{_CACHE_MARK}}}]"),
                        ]
                    )
                )
                .when(split.is_not_null())
                .then(
                    pl.concat_str(
                        [
                            pl.lit('[{"type":"text","text":'),
                            json_string(pl.col("prompt").str.slice(0, split)),
                            pl.lit(f',{_CACHE_MARK}}},{{"type":"text","text":'),
                            json_string(pl.col("prompt").str.slice(split)),
                            pl.lit("}]"),
                        ]
                    )
                )
                .otherwise(user_content)
            )
    line = pl.concat_str(
        [
            pl.lit('{"custom_id":"'),
            pl.col("job_id"),
            pl.lit('","params":{"model":'),
            json_string(pl.col("model")),
            pl.lit(',"messages":['),
            history_messages(jobs),
            pl.lit('{"role":"user","content":'),
            user_content,
            pl.lit("}]"),
            system,
            pl.lit(tail),
            pl.lit("}}"),
        ]
    )
    return jobs.select(line.alias("line")).to_series()


def openai_encode(self: Any, jobs: pl.DataFrame, spec: RequestSpec) -> pl.Series:
    tail = self.request_body_constant(spec, _model_of(jobs))
    user_content = (
        pl.col("content_json") if "content_json" in jobs.columns else json_string(pl.col("prompt"))
    )
    cache_key = (
        pl.when(pl.col("cache_key").is_not_null())
        .then(pl.concat_str([pl.lit(',"prompt_cache_key":'), json_string(pl.col("cache_key"))]))
        .otherwise(pl.lit(""))
        if "cache_key" in jobs.columns
        else pl.lit("")
    )
    system_msg = (
        pl.when(pl.col("system").is_not_null())
        .then(
            pl.concat_str(
                [pl.lit('{"role":"system","content":'), json_string(pl.col("system")), pl.lit("},")]
            )
        )
        .otherwise(pl.lit(""))
    )
    line = pl.concat_str(
        [
            pl.lit('{"custom_id":"'),
            pl.col("job_id"),
            pl.lit(f'","method":"POST","url":"{ENDPOINT}","body":{{"model":'),
            json_string(pl.col("model")),
            pl.lit(',"messages":['),
            system_msg,
            history_messages(jobs),
            pl.lit('{"role":"user","content":'),
            user_content,
            pl.lit("}]"),
            cache_key,
            pl.lit(tail),
            pl.lit("}}"),
        ]
    )
    return jobs.select(line.alias("line")).to_series()


def gemini_encode(self: Any, jobs: pl.DataFrame, spec: RequestSpec) -> pl.Series:
    config = self.generation_config(spec, str(jobs.get_column("model")[0]) if jobs.height else None)
    parts = (
        pl.col("content_json")
        if "content_json" in jobs.columns
        else pl.concat_str([pl.lit('[{"text":'), json_string(pl.col("prompt")), pl.lit("}]")])
    )
    system = (
        pl.when(pl.col("system").is_not_null())
        .then(
            pl.concat_str(
                [
                    pl.lit(',"systemInstruction":{"parts":[{"text":'),
                    json_string(pl.col("system")),
                    pl.lit("}]}"),
                ]
            )
        )
        .otherwise(pl.lit(""))
    )
    line = pl.concat_str(
        [
            pl.lit('{"key":'),
            json_string(pl.col("job_id")),
            pl.lit(',"request":{"contents":['),
            history_messages(jobs, gemini=True),
            pl.lit('{"role":"user","parts":'),
            parts,
            pl.lit("}]"),
            system,
            pl.lit(f',"generationConfig":{config}}}}}'),
        ]
    )
    return jobs.select(line.alias("line")).to_series()
