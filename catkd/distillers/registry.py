from catkd.registry import Registry

DISTILLERS: Registry = Registry("distiller")
