// fuzz/keep_modules.cpp — preloaded (LD_PRELOAD) by bench/fuzz.py into the sanitizer test suite only.
//
// LeakSanitizer reports at exit, after Open MPI has dlclose()d its components (mca_*.so): the frames of
// what they leaked then read "<unknown module>", and no suppression in fuzz/lsan.supp can name them. With
// dlclose doing nothing, every library stays mapped until exit, so each report names its library and
// the suppressions apply (leaks in our own code still show in full).
extern "C" int dlclose(void* /*handle*/) { return 0; }
