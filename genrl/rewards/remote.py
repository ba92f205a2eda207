"""`remote`: a reward scored by a `genrl serve-reward` server over HTTP (docs/rewards_remote.md).

    reward: {name: remote, options: {url: "http://127.0.0.1:8700", timeout_s: 60, retries: 3}}

The token comes from `options.token` or the environment variable GENRL_REWARD_TOKEN (better: a
config is saved in the run directory). Building the reward asks the server's `/health` and
`/info`, so an unreachable URL or a refused token is one error before anything is written. A
batch goes as one safetensors body (images as float32, float16 or uint8 with the prompts and
group ids), split into the server's maximum batch (whole groups for a groupwise reward); the
answer is checked (count, shape, finiteness). Connection errors, timeouts and 5xx answers are
retried with exponential backoff; when the retries run out `RewardUnavailable` says so, and the
trainer stops as on SIGTERM (genrl.reward_outage). The client is the standard library's urllib.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Sequence

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from genrl.errors import ConfigError, RewardError
from genrl.rewards import base

TOKEN_ENV = "GENRL_REWARD_TOKEN"
ENCODINGS = {"float32": torch.float32, "float16": torch.float16, "uint8": torch.uint8}


class RewardUnavailable(RewardError):
    """The reward server did not answer (connection refused, timeout, 5xx) after every retry."""


# -- the wire format: one safetensors body each way, strings in its metadata ---------------------------
def encode_batch(images: Tensor, prompts: Sequence[str], group_ids: Tensor, encoding: str = "float32") -> bytes:
    """images [N,3,H,W] (or clips [N,F,3,H,W]) in [0,1] as `encoding` (uint8: round(255·x)), group ids [N], prompts as JSON metadata."""
    images = images.detach().float().cpu()
    pixels = images.mul(255).round_().clamp_(0, 255).to(torch.uint8) if encoding == "uint8" else images.to(ENCODINGS[encoding])
    tensors = {"images": pixels.contiguous(), "group_ids": torch.as_tensor(group_ids).cpu().to(torch.int64).contiguous()}
    return save_tensors(tensors, metadata={"prompts": json.dumps(list(prompts))})


def decode_batch(body: bytes) -> tuple[Tensor, list[str], Tensor]:
    """(images float32 [N,3,H,W] or clips [N,F,3,H,W] in [0,1], prompts, group ids [N]); RewardError for a
    malformed body."""
    tensors, metadata = _read(body, ("images", "group_ids"), "prompts")
    images, group_ids, prompts = tensors["images"], tensors["group_ids"], json.loads(metadata["prompts"])
    images = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    if images.ndim not in (4, 5) or images.shape[-3] != 3 or group_ids.shape != (len(images),) or len(prompts) != len(images):
        raise RewardError(f"a batch needs images [N,3,H,W] or clips [N,F,3,H,W], group_ids [N] and N prompts; got images {tuple(images.shape)}, "
                          f"group_ids {tuple(group_ids.shape)}, {len(prompts)} prompts")
    return images, prompts, group_ids


def encode_scores(rewards: Tensor, components: Tensor) -> bytes:
    return save_tensors({"rewards": rewards.detach().float().cpu().contiguous(),
                         "components": components.detach().float().cpu().contiguous()})


def decode_scores(body: bytes) -> tuple[Tensor, Tensor]:
    tensors, _ = _read(body, ("rewards", "components"), None)
    return tensors["rewards"], tensors["components"]


def _read(body: bytes, names: tuple[str, ...], meta_key: str | None) -> tuple[dict, dict]:
    try:
        tensors = load_tensors(body)
        size = int.from_bytes(body[:8], "little")  # safetensors: an 8-byte header length, then the JSON header
        metadata = json.loads(body[8:8 + size]).get("__metadata__") or {}
    except Exception as err:  # noqa: BLE001 - whatever the parser says, the body is not a batch
        raise RewardError(f"the body is not a safetensors batch ({type(err).__name__}: {err})") from None
    missing = [n for n in names if n not in tensors] + ([meta_key] if meta_key and meta_key not in metadata else [])
    if missing:
        raise RewardError(f"the safetensors body lacks {', '.join(missing)}")
    return tensors, metadata


# -- the client ------------------------------------------------------------------------------------
class RewardClient:
    """HTTP calls to one server: retries with exponential backoff on connection errors, timeouts and
    5xx; any other refusal (401, 413, 422) at once. Every failure is one line naming the URL."""

    def __init__(self, url: str, timeout_s: float = 60.0, retries: int = 3, token: str | None = None,
                 backoff_s: float = 1.0):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"reward.options.url={url!r}: give the server's address, e.g. http://127.0.0.1:8700")
        if not (timeout_s > 0 and retries >= 0 and backoff_s >= 0):
            raise ConfigError(f"reward.options: timeout_s={timeout_s} must be > 0, retries={retries} and "
                              f"backoff_s={backoff_s} >= 0")
        self.url, self.timeout_s, self.retries, self.backoff_s = url.rstrip("/"), float(timeout_s), int(retries), backoff_s
        self.token = token or os.environ.get(TOKEN_ENV) or None

    def request(self, path: str, body: bytes | None = None) -> bytes:
        headers = {"Content-Type": "application/octet-stream"} | ({"Authorization": f"Bearer {self.token}"} if self.token else {})
        start, cause = time.monotonic(), ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(urllib.request.Request(self.url + path, body, headers),
                                            timeout=self.timeout_s) as answer:
                    return answer.read()
            except urllib.error.HTTPError as err:
                cause = f"HTTP {err.code}: {_message(err)}"
                if err.code < 500:  # the server refused this request: asking again would not help
                    hint = f" (reward.options.token or {TOKEN_ENV})" if err.code == 401 else ""
                    raise RewardError(f"reward server {self.url}{path} refused the request: {cause}{hint}") from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as err:
                reason = getattr(err, "reason", err)
                cause = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
        raise RewardUnavailable(f"reward server {self.url}{path} unavailable: {cause} ({self.retries + 1} tries over "
                                f"{time.monotonic() - start:.1f} s, reward.options.retries={self.retries}, "
                                f"timeout_s={self.timeout_s:g})")

    def json(self, path: str) -> dict:
        body = self.request(path)
        try:
            return json.loads(body)
        except ValueError:
            raise RewardError(f"reward server {self.url}{path} answered something that is not JSON: {body[:80]!r}") from None


def _message(err: urllib.error.HTTPError) -> str:
    """The server's JSON `error` (on one line), or the status line's reason."""
    try:
        message = str(json.loads(err.read()).get("error", err.reason))
    except Exception:  # noqa: BLE001 - not genrl's JSON error: the status line is all there is
        message = str(err.reason)
    return " ".join(message.split())


class RemoteReward:
    """A reward hosted by `genrl serve-reward`; groupwise when the hosted one is. Made by `connect`."""

    remote = True  # genrl.reward_outage: a run with this reward stops cleanly when the server stays down

    def __init__(self, client: RewardClient, info: dict, encoding: str = "float32"):
        self.client, self.info, self.encoding = client, info, encoding
        self.name = f"remote {info['reward']} at {client.url}"
        self.groupwise = bool(info.get("groupwise"))
        self.reads = info.get("reads") or "images"  # what the hosted reward judges (servers before clips: images)
        self.max_batch = int(info["max_batch"])
        self.component_names = list(info["components"])
        self.weights = torch.tensor(info["weights"], dtype=torch.float32)

    def check_prompt(self, prompt: str) -> None:
        """Raise ValueError for a prompt the hosted reward cannot score (its own `check_prompt`, asked over HTTP)."""
        if self.info.get("checks_prompts"):
            answer = json.loads(self.client.request("/check", json.dumps({"prompt": prompt}).encode()))
            if not answer.get("ok"):
                raise ValueError(answer.get("error") or f"the reward server refuses the prompt {prompt!r}")

    def batches(self, group_ids: Tensor) -> list[Tensor]:
        """Row indices of each request: at most the server's max_batch rows, whole groups when groupwise."""
        if not self.groupwise:
            return list(torch.arange(len(group_ids)).split(self.max_batch))
        batches, current = [], []
        for group in torch.unique(group_ids):
            members = (group_ids == group).nonzero().flatten().tolist()
            if len(members) > self.max_batch:
                raise RewardError(f"reward server {self.client.url}: a group of {len(members)} images is larger than its "
                                  f"max batch {self.max_batch}; start it with --max-batch {len(members)} or more")
            if len(current) + len(members) > self.max_batch:
                batches.append(torch.tensor(current))
                current = []
            current += members
        return batches + ([torch.tensor(current)] if current else [])

    def scored(self, images: Tensor, prompts: Sequence[str], group_ids: Tensor | None = None) -> Tensor:
        """[N, M]: each of the hosted reward's components (one for a single reward), checked."""
        group_ids = base.groups_of_prompts(prompts) if group_ids is None else torch.as_tensor(group_ids).cpu()
        out = torch.empty(len(prompts), len(self.component_names))
        for rows in self.batches(group_ids):
            batch = [prompts[i] for i in rows.tolist()]
            body = encode_batch(images[rows.to(images.device)], batch, group_ids[rows], self.encoding)
            out[rows] = self._checked(self.client.request("/score", body), batch)
        return out.to(images.device)

    def _checked(self, body: bytes, prompts: list[str]) -> Tensor:
        where = f"reward server {self.client.url}/score"
        try:
            rewards, components = decode_scores(body)
        except RewardError as err:
            raise RewardError(f"{where} answered {err}") from None
        n, m = len(prompts), len(self.component_names)
        if rewards.shape != (n,) or components.shape != (n, m):
            raise RewardError(f"{where} answered rewards {tuple(rewards.shape)} and components {tuple(components.shape)} "
                              f"for {n} images, expected ({n},) and ({n}, {m})")
        bad = (~torch.isfinite(components)).any(1).nonzero().flatten().tolist()
        if bad:
            raise RewardError(f"{where} answered {components[bad[0]].tolist()} for prompt {prompts[bad[0]]!r} "
                              f"({len(bad)} of {n} images have NaN or inf scores)")
        return components

    def __call__(self, images: Tensor, prompts: Sequence[str], group_ids: Tensor | None = None) -> Tensor:
        scores = self.scored(images, prompts, group_ids)
        return scores[:, 0] if scores.shape[1] == 1 else scores @ self.weights.to(scores.device)


class RemoteMultiReward(RemoteReward):
    """A hosted `multi`: its components come back apart, so `reward.normalize: group` applies as in-process
    (genrl.rewards.base.score combines a reward's `components`)."""

    def components(self, images: Tensor, prompts: Sequence[str], group_ids: Tensor | None = None) -> Tensor:
        return self.scored(images, prompts, group_ids)


@base.register("remote")
def connect(url: str, timeout_s: float = 60.0, retries: int = 3, token: str | None = None, backoff_s: float = 1.0,
            encoding: str = "float32") -> RemoteReward:
    """The `remote` reward, after the server's `/health` and `/info` answered (an unreachable server or a
    refused token is one error before the run writes anything)."""
    if encoding not in ENCODINGS:
        raise ConfigError(f"reward.options.encoding={encoding!r} is not one of {', '.join(ENCODINGS)}")
    client = RewardClient(url, timeout_s, retries, token, backoff_s)
    client.json("/health")
    info = client.json("/info")
    return (RemoteMultiReward if info.get("multi") else RemoteReward)(client, info, encoding)


def depends_on_server(reward) -> bool:
    """Whether scoring with `reward` calls a reward server (itself, or one of a multi's parts)."""
    return bool(getattr(reward, "remote", False)) or any(depends_on_server(p) for p in getattr(reward, "parts", ()))
