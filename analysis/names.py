"""The settings the report's layouts read, by their dotted config keys, and the one table of how the
report displays them (β, R, n, ...). Everything before the report names a setting by its dotted
key; only what a reader sees is renamed, here."""
from __future__ import annotations

from catkd.study.keys import short_name

BETA = "CAT_KD.LOSS.CAT_loss_weight"
RES = "CAT_KD.LOSS.CAM_RESOLUTION"
BIN = "CAT_KD.IF_BINARIZE"
PARTIAL = "CAT_KD.IF_OnlyTransferPartialCAMs"
NUMS = "CAT_KD.CAMs_Nums"
STRATEGY = "CAT_KD.Strategy"
TYPE, TEACHER, STUDENT = "DISTILLER.TYPE", "DISTILLER.TEACHER", "DISTILLER.STUDENT"
ONLY_CAT = "CAT_KD.onlyCAT"
RATE, CLASSES = "DATASET.RESERVED_RATE", "DATASET.RESERVED_CLASS_NUM"

# How a reader sees a setting: the paper's symbols where it has one, else the study file's word.
DISPLAY = {
    BETA: "β",
    RES: "R",
    NUMS: "n",
    STRATEGY: "strategy",
    BIN: "binarized",
    PARTIAL: "partial CAMs",
    ONLY_CAT: "CAT only",
    RATE: "reserved rate",
    CLASSES: "reserved classes",
    TYPE: "method",
    "DATASET.TYPE": "data",
    "TRANSFER.SOURCE_METHOD": "source",
    "TRANSFER.SOURCE_PAIR": "pair",
    "TRANSFER.SOURCE_SEED": "source seed",
    TEACHER: "teacher",
    STUDENT: "student",
}
# Settings a trial's label leaves out: a path that the settings beside it already name (a probed
# student's checkpoint is its source method, pair and seed).
UNLABELLED = {"TRANSFER.SOURCE"}
# Longer labels for plot axes.
AXIS = {BETA: "β (CAT loss weight)", RES: "CAM resolution R"}


def display(key: str) -> str:
    """The name a table or plot shows for a dotted key: DISPLAY, else the study's word, else the key's last part."""
    if key in DISPLAY:
        return DISPLAY[key]
    word = short_name(key)
    return word if word != key else key.split(".")[-1]


def display_in_search(key: str) -> str:
    """`<search> / <key>` (a study of several searches) shown as `<search> / <display name>`."""
    search, _, k = key.rpartition(" / ")
    return f"{search} / {display(k)}" if search else display(k)
