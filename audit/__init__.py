"""The operators' audit log: who did what to which object, and when.

Every operator action writes one ``AuditEvent`` through ``audit.services.audit_record``: the admin's
actions and its add/change/delete hooks (``audit.adminlog.AuditedAdminMixin``), the live
supervision's stop, and the management commands that change data (``audit.commands``). The admin
shows the log read-only (*Audit › Audit events*). docs/operations.md, "Audit log".
"""
