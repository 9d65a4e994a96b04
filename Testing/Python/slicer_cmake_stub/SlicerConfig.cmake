# A stand-in for a Slicer build tree, for test_slicer_packaging.py: configuring the extension against
# it runs the real CMakeLists.txt files and copies each packaged file where a Slicer build would put
# it, following the path rules of slicerMacroBuildScriptedModule and CTK's ctkMacroCompilePythonScript
# (read in Slicer's and CTK's sources; this is an independent re-implementation of those rules only).
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake")
set(Slicer_FOUND TRUE)
