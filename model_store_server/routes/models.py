"""Explicit control of the worker's tiers: ``/models/<name>/load|unload|pin`` and eviction.

Routes parse and validate, call ``ModelControl`` (the same state, policies and
swap path as requests), and answer with what was done.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from model_store_server.control import ModelControl
from model_swap.errors import BadRequest
from model_swap.names import InvalidModelName, validate_model_name
from model_swap.requests_json import parse_keep_alive, read_json_object

models = Blueprint("models", __name__, url_prefix="/models")


def control() -> ModelControl:
    return current_app.extensions["model_control"]


def _name(name: str) -> str:
    try:
        return validate_model_name(name)
    except InvalidModelName as err:
        raise BadRequest(f"model: {err}", param="model") from None


def _keep_alive() -> float | None:
    """``keep_alive`` from an optional JSON body."""
    if not request.content_length:
        return None
    return parse_keep_alive(read_json_object(request).get("keep_alive"))


@models.post("/<name>/load")
def load(name: str):
    return jsonify(control().load(_name(name), keep_alive=_keep_alive()))


@models.post("/<name>/unload")
def unload(name: str):
    return jsonify(control().unload(_name(name), request.args.get("worker")))


@models.delete("/<name>")
def evict(name: str):
    return jsonify(control().evict(_name(name), request.args.get("worker")))


@models.put("/<name>/pin")
def pin(name: str):
    return jsonify(control().load(_name(name), keep_alive=_keep_alive(), pin=True))


@models.delete("/<name>/pin")
def unpin(name: str):
    return jsonify(control().unpin(_name(name)))
