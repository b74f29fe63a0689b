"""The tweet/CoNLL-U tagger, an application of the library: readers, vocabularies and batches
(``data``), the feature network, tagger and ensemble (``model``), and ``TaggerConfig``, the one
place each of its options lives. The rest of ebm_ext never imports this package."""
from . import data
from .config import TaggerConfig
from .export import ExportedTagger, export_tagger
from .model import (EnergyTagger, FeatureNetwork, TaggerEnsemble, build_tagger, load_tagger,
                    tagger_from_state)

__all__ = ["data", "TaggerConfig", "ExportedTagger", "export_tagger", "EnergyTagger",
           "FeatureNetwork", "TaggerEnsemble", "build_tagger", "load_tagger", "tagger_from_state"]
