from django.apps import AppConfig


class ScriptedModelConfig(AppConfig):
    """Registers ``manage.py scripted_model`` (scripted_model/management/commands/); no models."""

    name = "scripted_model"
    verbose_name = "Scripted model (offline demo and test tool)"
