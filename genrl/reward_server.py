"""`genrl serve-reward`: any genrl reward (a `multi` too) over HTTP, for `reward: {name: remote}`
(docs/rewards_remote.md).

Starlette on uvicorn: a small, maintained ASGI pair (pure-Python starlette, uvicorn with h11 and
click) rather than a WSGI development server (werkzeug's own docs say not to deploy it) or aiohttp
(a client, a server and six compiled dependencies). Endpoints:

- `GET /health`: {"status": "ok"} once the reward is loaded;
- `GET /info`: the reward's name and options, its components and weights, whether it is
  groupwise, the maximum batch, the request timeout, the genrl version;
- `POST /score`: a safetensors body (genrl.rewards.remote.encode_batch) → a safetensors body of
  `rewards` [N] and `components` [N, M] (M = 1 for a single reward);
- `POST /check`: {"prompt": ...} → {"ok": true} or {"ok": false, "error": why the reward cannot
  score it} (the reward's `check_prompt`, when it has one).

Refusals are JSON `{"error": ...}`: 401 without the token (when one is set, on every endpoint),
413 for a batch over `--max-batch`, 422 for a batch the reward rejects, 504 after `--timeout-s`,
500 for a reward's bug. Scoring runs in a worker thread, one batch at a time (a reward model is
not shared between threads).
"""

from __future__ import annotations

import errno
import hmac
import importlib.metadata
import ipaddress
import os
import socket
import sys
import threading
import traceback

import anyio
import torch
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from genrl.errors import ConfigError, RewardError, UserError
from genrl.rewards import checked_call, is_groupwise
from genrl.rewards.base import reads
from genrl.rewards.remote import decode_batch, encode_scores


class BatchTooLarge(RewardError):
    pass


class RewardService:
    """The hosted reward: decodes a batch, scores it under a lock, encodes the answer."""

    def __init__(self, reward, name: str, options: dict, device: str = "cpu", max_batch: int = 256,
                 timeout_s: float = 300.0, token: str | None = None):
        if max_batch < 1 or timeout_s <= 0:
            raise ConfigError(f"--max-batch {max_batch} must be >= 1 and --timeout-s {timeout_s} > 0")
        self.reward, self.name, self.options, self.device = reward, name, options, device
        self.max_batch, self.timeout_s, self.token = max_batch, timeout_s, token
        self.lock = threading.Lock()
        multi = hasattr(reward, "components")
        self.component_names = list(reward.names) if multi else [name]
        self.weights = [float(w) for w in reward.weights] if multi else [1.0]
        self.multi = multi

    def info(self) -> dict:
        return {"reward": self.name, "options": self.options, "components": self.component_names,
                "weights": self.weights, "multi": self.multi, "groupwise": is_groupwise(self.reward),
                "reads": reads(self.reward) or "any",
                "checks_prompts": hasattr(self.reward, "check_prompt"),
                "max_batch": self.max_batch, "timeout_s": self.timeout_s, "device": self.device,
                "genrl": importlib.metadata.version("genrl")}

    def score(self, body: bytes) -> bytes:
        images, prompts, group_ids = decode_batch(body)
        if len(prompts) > self.max_batch:
            raise BatchTooLarge(f"a batch of {len(prompts)} images is over this server's --max-batch {self.max_batch}")
        with self.lock, torch.no_grad():
            images = images.to(self.device)
            if self.multi:
                components = self.reward.components(images, prompts, group_ids)
                rewards = components @ self.reward.weights.to(components.device)
            else:
                rewards = checked_call(self.reward, images, prompts, self.name, group_ids)
                components = rewards[:, None].clone()  # safetensors stores tensors that share memory once
        return encode_scores(rewards, components)

    def authorized(self, request: Request) -> bool:
        if not self.token:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())


def make_app(service: RewardService) -> Starlette:
    def refusal(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def guarded(handler):
        async def endpoint(request: Request):
            if not service.authorized(request):
                return refusal(401, "missing or wrong token (Authorization: Bearer TOKEN)")
            return await handler(request)
        return endpoint

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def info(request: Request) -> Response:
        return JSONResponse(service.info())

    async def score(request: Request) -> Response:
        body = await request.body()
        try:
            with anyio.fail_after(service.timeout_s):
                answer = await anyio.to_thread.run_sync(service.score, body, abandon_on_cancel=True)
        except TimeoutError:
            return refusal(504, f"scoring took longer than the server's --timeout-s {service.timeout_s:g}")
        except BatchTooLarge as err:
            return refusal(413, str(err))
        except (UserError, ValueError) as err:  # a batch this reward cannot score: asking again would not help
            return refusal(422, str(err))
        except Exception as err:  # noqa: BLE001 - the reward's bug: logged here, one line to the client
            traceback.print_exc()
            return refusal(500, f"the reward failed: {type(err).__name__}: {err}")
        return Response(answer, media_type="application/octet-stream")

    async def check(request: Request) -> Response:  # a prompt the reward cannot score, before a run starts
        try:
            service.reward.check_prompt(str((await request.json())["prompt"]))
        except (ValueError, KeyError, TypeError) as err:
            return JSONResponse({"ok": False, "error": str(err)})
        return JSONResponse({"ok": True})

    routes = [Route("/health", guarded(health)), Route("/info", guarded(info)),
              Route("/score", guarded(score), methods=["POST"]), Route("/check", guarded(check), methods=["POST"])]
    return Starlette(routes=routes)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or one clear error for a port in use or an address this machine does not have."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted server may take its port back at once
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use (another server?): stop it or give --port another "
                              "number (--port 0 picks a free one)") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.listen(128)
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(service: RewardService, sock: socket.socket) -> None:
    """Answer requests on `sock` until SIGINT / SIGTERM (uvicorn shuts down gracefully, then re-raises it)."""
    host, port = sock.getsockname()[:2]
    if not is_loopback(host) and not service.token:
        print(f"genrl: warning: serving on {host} without a token: anyone who reaches the port can use the reward "
              "(--token or GENRL_REWARD_TOKEN)", file=sys.stderr)
    print(f"genrl: serving reward {service.name!r} on http://{host}:{port} (max batch {service.max_batch}, "
          f"timeout {service.timeout_s:g} s{', token required' if service.token else ''})", flush=True)
    server = uvicorn.Server(uvicorn.Config(make_app(service), log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down on SIGINT / SIGTERM, then re-raised it: a normal stop
        pass
    print(f"genrl: the reward server on http://{host}:{port} stopped", file=sys.stderr)


def serve_command(items: list[str], host: str = "127.0.0.1", port: int = 8700, token: str | None = None,
                  max_batch: int = 256, timeout_s: float = 300.0, device: str | None = None) -> None:
    """`genrl serve-reward [CONFIG] [reward.*=... device=...]`: the config's reward section, served. The port
    is taken before the reward loads, so a port in use is reported at once."""
    from genrl import config
    from genrl.build import build_reward
    from genrl.rewards.remote import TOKEN_ENV

    path, overrides = config.split_config_and_overrides(items)
    other = [o for o in overrides if not o.startswith(("reward.", "reward=", "device="))]
    if other:
        raise ConfigError(f"serve-reward takes reward.* (and device=) overrides only, not {', '.join(other)}")
    cfg = config.load(path, overrides)
    service_options = dict(max_batch=max_batch, timeout_s=timeout_s, token=token or os.environ.get(TOKEN_ENV))
    if max_batch < 1 or timeout_s <= 0:
        raise ConfigError(f"--max-batch {max_batch} must be >= 1 and --timeout-s {timeout_s} > 0")
    sock = bind(host, port)
    try:
        service = RewardService(build_reward(cfg), cfg.reward.name, cfg.reward.options, device or cfg.device,
                                **service_options)
        serve(service, sock)
    finally:
        sock.close()
