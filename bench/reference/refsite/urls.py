from django.contrib import admin
from django.urls import path
from entries import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("bare/", views.entry_create, name="entry_create"),
    path("async/", views.entry_create_async, name="entry_create_async"),
    path("read/<int:pk>/", views.entry_detail, name="entry_detail"),
]
