"""The Pulumi side: one ComponentResource per file, plus pure manifest builders."""
