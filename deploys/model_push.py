"""Push the fleet's model keys and the model release to hosts without switching to it: pre-stage a
large model ahead of a rollout window. The site deploy then verifies and activates it; an
interrupted push resumes where it stopped.

    pyinfra inventories/<yours>.py deploys/model_push.py -y
"""

from roles.base import base
from roles.model import model
from roles.settings import check_settings

check_settings()
base()
model()
