"""The models: a typed config, layers and blocks, and one file per family.

Importing lm.model registers the built-in families (decoder, encoder,
encoder_decoder, lstm) in lm/model/registry.py.
"""

from lm.model import decoder  # pylint: disable=unused-import
from lm.model import encoder  # pylint: disable=unused-import
from lm.model import encoder_decoder  # pylint: disable=unused-import
from lm.model import lstm  # pylint: disable=unused-import
