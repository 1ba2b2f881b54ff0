from kwyn.backbones.base import Backbone
from kwyn.backbones.crepe import CrepeBackbone
