"""Infra validation: would TF Serving load these models and answer in time?"""
