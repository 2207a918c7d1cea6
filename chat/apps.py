from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_migrate, post_save

        from chat.apikeys import api_key_cache_forget
        from chat.models import ApiKey
        from chat.search import search_index_ensure

        def forget_key(sender, instance, **kwargs):
            api_key_cache_forget(prefix=instance.prefix)

        def forget_owner(sender, instance, **kwargs):
            api_key_cache_forget(owner_id=instance.pk)

        # A key or its owner changed through the ORM in this process: the websocket handshake's
        # key cache (chat.apikeys) must not answer from the old row.
        post_save.connect(forget_key, sender=ApiKey, dispatch_uid="chat.apikey_cache.key_saved", weak=False)
        post_delete.connect(
            forget_key, sender=ApiKey, dispatch_uid="chat.apikey_cache.key_deleted", weak=False
        )
        user_model = get_user_model()
        post_save.connect(
            forget_owner, sender=user_model, dispatch_uid="chat.apikey_cache.owner_saved", weak=False
        )
        post_delete.connect(
            forget_owner, sender=user_model, dispatch_uid="chat.apikey_cache.owner_deleted", weak=False
        )
        # SQLite drops a table's triggers when a migration rebuilds it: put the search
        # index's back (chat.search, migration 0007).
        post_migrate.connect(
            search_index_ensure, sender=self, dispatch_uid="chat.search.index_ensure", weak=False
        )
