/* Client.append, read_next, batch_read and reserve with no Python frame between the caller and hot.c.
 *
 * Why: appending or reading a 100-byte entry costs ~0.15 us in hot.c and ~0.3 us in the
 * Python method around it (its frame, the handle lookup by a (topic, group) tuple, the
 * argument checks); per-entry callers (read_next in a loop) ran at half the speed of the
 * compiled calls made directly (scripts/dispatch_cost.py).  A Dispatch serves the call
 * when every argument is one the Python method would take as it is and the handle's
 * compiled path serves it (a read that does not wait and finds nothing included: None);
 * anything else (another argument, a miss, a read that waits, a dead broker) calls the
 * Python method itself with the same arguments, so there is one definition of the
 * behaviour, client/facade.py's.  The general path may then try the compiled call once
 * more: a miss leaves nothing changed, so that is only time (an append's once a block).
 *
 * The client keeps it in step (facade.py): the handles with a compiled path, by the same
 * keys as its own dicts, and whether it is connected.  Included by hot.c after Appender
 * and Reader. */

typedef struct {
    PyObject_HEAD
    PyObject *client;              /* the general path's self */
    PyObject *general_append;      /* Client.append: the Python function */
    PyObject *general_read_next;   /* Client.read_next */
    PyObject *general_batch_read;  /* Client.batch_read, or NULL: not served (io_uring reads batches) */
    PyObject *general_reserve;     /* Client.reserve, or NULL: not served */
    PyObject *appenders;           /* topic -> Appender */
    PyObject *readers;             /* (topic, group) -> Reader */
    /* The last handle of each kind and its key, compared by identity: a program that
     * reads one topic passes the same str objects every call (a literal, or a name). */
    PyObject *append_topic, *appender;
    PyObject *read_topic, *read_group, *reader;
    int alive;                     /* the client's _alive: False sends every call to Python */
} Dispatch;

static PyObject *str_group, *str_checkpoint, *str_timeout, *str_zero_copy, *str_default;

static void forget_last(Dispatch *self)
{
    Py_CLEAR(self->append_topic);
    Py_CLEAR(self->appender);
    Py_CLEAR(self->read_topic);
    Py_CLEAR(self->read_group);
    Py_CLEAR(self->reader);
}

static int Dispatch_init(Dispatch *self, PyObject *args, PyObject *kwds)
{
    PyObject *client, *general_append, *general_read_next, *general_batch_read = Py_None, *general_reserve = Py_None;
    if (!PyArg_ParseTuple(args, "OOO|OO", &client, &general_append, &general_read_next, &general_batch_read,
                          &general_reserve))
        return -1;
    if (self->client != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Dispatch initialised twice");
        return -1;
    }
    if (!PyCallable_Check(general_append) || !PyCallable_Check(general_read_next)
            || (general_batch_read != Py_None && !PyCallable_Check(general_batch_read))
            || (general_reserve != Py_None && !PyCallable_Check(general_reserve))) {
        PyErr_SetString(PyExc_TypeError,
                        "Dispatch(client, append, read_next[, batch_read[, reserve]]): the general paths must be callable");
        return -1;
    }
    if ((self->appenders = PyDict_New()) == NULL || (self->readers = PyDict_New()) == NULL)
        return -1;
    self->client = Py_NewRef(client);
    self->general_append = Py_NewRef(general_append);
    self->general_read_next = Py_NewRef(general_read_next);
    self->general_batch_read = general_batch_read == Py_None ? NULL : Py_NewRef(general_batch_read);
    self->general_reserve = general_reserve == Py_None ? NULL : Py_NewRef(general_reserve);
    return 0;
}

static int Dispatch_traverse(Dispatch *self, visitproc visit, void *arg)
{
    Py_VISIT(self->client);
    Py_VISIT(self->general_append);
    Py_VISIT(self->general_read_next);
    Py_VISIT(self->general_batch_read);
    Py_VISIT(self->general_reserve);
    Py_VISIT(self->appenders);
    Py_VISIT(self->readers);
    Py_VISIT(self->append_topic);
    Py_VISIT(self->appender);
    Py_VISIT(self->read_topic);
    Py_VISIT(self->read_group);
    Py_VISIT(self->reader);
    return 0;
}

static int Dispatch_clear(Dispatch *self)
{
    forget_last(self);
    Py_CLEAR(self->client);
    Py_CLEAR(self->general_append);
    Py_CLEAR(self->general_read_next);
    Py_CLEAR(self->general_batch_read);
    Py_CLEAR(self->general_reserve);
    Py_CLEAR(self->appenders);
    Py_CLEAR(self->readers);
    return 0;
}

static void Dispatch_dealloc(Dispatch *self)
{
    PyObject_GC_UnTrack(self);
    Dispatch_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The Python method, called as the caller called this: client first, the same
 * positional and keyword arguments. */
static PyObject *general(Dispatch *self, PyObject *function, PyObject *const *args, Py_ssize_t nargs,
                         PyObject *kwnames)
{
    if (self->client == NULL || function == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the client's Dispatch was cleared");
        return NULL;
    }
    Py_ssize_t total = nargs + (kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames));
    PyObject *small[8];
    PyObject **stack = total < 8 ? small : PyMem_New(PyObject *, total + 1);
    if (stack == NULL)
        return PyErr_NoMemory();
    /* Held for the call: it may close the client, which clears this Dispatch. */
    PyObject *client = Py_NewRef(self->client);
    Py_INCREF(function);
    stack[0] = client;
    for (Py_ssize_t i = 0; i < total; i++)
        stack[i + 1] = args[i];
    PyObject *result = PyObject_Vectorcall(function, stack, (size_t)nargs + 1, kwnames);
    Py_DECREF(function);
    Py_DECREF(client);
    if (stack != small)
        PyMem_Free(stack);
    return result;
}

static Appender *appender_for(Dispatch *self, PyObject *topic)
{
    if (topic == self->append_topic && topic != NULL)
        return (Appender *)self->appender;
    if (self->appenders == NULL || !PyUnicode_CheckExact(topic))
        return NULL;
    PyObject *found = PyDict_GetItemWithError(self->appenders, topic);   /* a str's hash cannot fail */
    if (found == NULL)
        return NULL;
    Py_INCREF(topic);
    Py_XSETREF(self->append_topic, topic);
    Py_INCREF(found);
    Py_XSETREF(self->appender, found);
    return (Appender *)found;
}

/* append(topic, data) -> offset: Client.append. */
static PyObject *Dispatch_append(Dispatch *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs == 2 && kwnames == NULL && self->alive) {
        Appender *appender = appender_for(self, args[0]);
        if (appender != NULL) {
            Py_INCREF(appender);   /* data's buffer export may run code that closes the client */
            PyObject *offset = Appender_append(appender, args[1]);
            Py_DECREF(appender);
            if (offset == NULL)
                return NULL;
            if (PyLong_AsLongLong(offset) >= 0)
                return offset;
            Py_DECREF(offset);
        }
    }
    return general(self, self->general_append, args, nargs, kwnames);
}

/* Which of read_next's keywords ``name`` is (0 group, 1 checkpoint, 2 timeout, 3 zero_copy),
 * or -1: by identity (the compiler interns keyword names), else by value. */
static int keyword_slot(PyObject *name)
{
    PyObject *known[4] = {str_group, str_checkpoint, str_timeout, str_zero_copy};
    for (int i = 0; i < 4; i++)
        if (name == known[i])
            return i;
    for (int i = 0; i < 4; i++)
        if (PyUnicode_Compare(name, known[i]) == 0)
            return i;
    return -1;
}

/* A timeout check_timeout (timeouts.py) accepts as it is: None, a float neither negative
 * nor NaN, an int >= 0 (not a bool).  Anything else goes to the Python method, which
 * says what is wrong with it even when an entry is there to read. */
static int plainly_valid_timeout(PyObject *timeout)
{
    if (timeout == Py_None)
        return 1;
    if (PyFloat_CheckExact(timeout)) {
        double seconds = PyFloat_AS_DOUBLE(timeout);
        return seconds >= 0.0;   /* false for NaN */
    }
    if (PyLong_CheckExact(timeout)) {
        int overflow;
        long long seconds = PyLong_AsLongLongAndOverflow(timeout, &overflow);
        if (seconds == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        return overflow > 0 || (overflow == 0 && seconds >= 0);
    }
    return 0;
}

/* A plainly valid timeout (or none given: 0.0) that does not wait. */
static int no_wait(PyObject *timeout)
{
    if (timeout == NULL)
        return 1;
    if (PyFloat_CheckExact(timeout))
        return PyFloat_AS_DOUBLE(timeout) == 0.0;
    if (PyLong_CheckExact(timeout)) {
        int overflow;
        return PyLong_AsLongLongAndOverflow(timeout, &overflow) == 0 && overflow == 0;
    }
    return 0;
}

static Reader *reader_for(Dispatch *self, PyObject *topic, PyObject *group)
{
    if (topic == self->read_topic && group == self->read_group && topic != NULL)
        return (Reader *)self->reader;
    if (self->readers == NULL || !PyUnicode_CheckExact(topic) || !PyUnicode_CheckExact(group))
        return NULL;
    PyObject *key = PyTuple_Pack(2, topic, group);
    if (key == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *found = PyDict_GetItemWithError(self->readers, key);
    Py_DECREF(key);
    if (found == NULL) {
        PyErr_Clear();
        return NULL;
    }
    Py_INCREF(topic);
    Py_XSETREF(self->read_topic, topic);
    Py_INCREF(group);
    Py_XSETREF(self->read_group, group);
    Py_INCREF(found);
    Py_XSETREF(self->reader, found);
    return (Reader *)found;
}

/* The keywords read_next and batch_read share, after ``nargs`` positional arguments, into
 * given[] = {group, checkpoint, timeout, zero_copy} (timeout NULL: not given, 0.0).
 * 0 when the Python method must have the call: a name it does not take (it says so), a
 * checkpoint or zero_copy not exactly a bool, a timeout it would not take as it is. */
static int plain_read_keywords(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject *given[4])
{
    given[0] = str_default;
    given[1] = Py_True;
    given[2] = NULL;
    given[3] = Py_False;
    if (kwnames != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            int slot = keyword_slot(PyTuple_GET_ITEM(kwnames, i));
            if (slot < 0) {
                PyErr_Clear();
                return 0;
            }
            given[slot] = args[nargs + i];
        }
    }
    PyObject *checkpoint = given[1], *timeout = given[2], *zero_copy = given[3];
    return (checkpoint == Py_True || checkpoint == Py_False) && (zero_copy == Py_True || zero_copy == Py_False)
           && (timeout == NULL || plainly_valid_timeout(timeout));
}

/* read_next(topic, *, group="default", checkpoint=True, timeout=0.0, zero_copy=False): Client.read_next. */
static PyObject *Dispatch_read_next(Dispatch *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *given[4];
    if (nargs != 1 || !self->alive || !plain_read_keywords(args, nargs, kwnames, given))
        goto general_path;
    PyObject *group = given[0], *checkpoint = given[1], *timeout = given[2], *zero_copy = given[3];
    Reader *reader = reader_for(self, args[0], group);
    if (reader == NULL)
        goto general_path;
    Py_INCREF(reader);
    PyObject *found = next_entry(reader, checkpoint == Py_True, zero_copy == Py_True ? FORM_VIEW : FORM_BYTES, 0);
    Py_DECREF(reader);
    if (found == NULL || Py_TYPE(found) == entry_type)
        return found;
    int nothing_there = PyLong_CheckExact(found);   /* an int: nothing below it to read */
    Py_DECREF(found);
    /* A read that does not wait (timeout 0, the default) and found nothing returns None, as
     * the Python method does (read_one): without trying the compiled path a second time
     * there, which a caller polling an empty topic (shmwal.aio on each wake) paid for. */
    if (nothing_there && no_wait(timeout))
        Py_RETURN_NONE;
general_path:
    return general(self, self->general_read_next, args, nargs, kwnames);
}

/* batch_read(topic, max_bytes, *, group="default", checkpoint=True, timeout=0.0,
 * zero_copy=False): Client.batch_read, served when hot.c's take serves it (the batch in
 * the block of the group's hint, see take_entries), copying or zero-copy. */
static PyObject *Dispatch_batch_read(Dispatch *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *given[4];
    if (self->general_batch_read == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this Dispatch does not serve batch_read");
        return NULL;
    }
    if (nargs != 2 || !self->alive || !PyLong_CheckExact(args[1]) || !plain_read_keywords(args, nargs, kwnames, given))
        goto general_path;
    int overflow = 0;
    long long max_bytes = PyLong_AsLongLongAndOverflow(args[1], &overflow);   /* an exact int: no error */
    if (overflow < 0 || (overflow == 0 && max_bytes < 0))
        goto general_path;   /* the Python method raises */
    if (overflow > 0)
        max_bytes = LLONG_MAX;
    Reader *reader = reader_for(self, args[0], given[0]);
    if (reader == NULL)
        goto general_path;
    Py_INCREF(reader);
    PyObject *found = take_entries(reader, (Py_ssize_t)MAX_READ_ENTRIES, max_bytes, given[1] == Py_True, 0,
                                   given[3] == Py_True);
    Py_DECREF(reader);
    if (found == NULL || PyList_CheckExact(found))
        return found;
    int nothing_there = PyLong_CheckExact(found);
    Py_DECREF(found);
    if (nothing_there && no_wait(given[2]))
        return PyList_New(0);   /* as the Python method: [] at once, the compiled path tried once */
general_path:
    return general(self, self->general_batch_read, args, nargs, kwnames);
}

/* reserve(topic, nbytes): Client.reserve, the compiled slot made here for an exact int
 * nbytes the method takes as it is and a topic whose appender the Dispatch serves. */
static PyObject *Dispatch_reserve(Dispatch *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (self->general_reserve == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this Dispatch does not serve reserve");
        return NULL;
    }
    if (nargs == 2 && kwnames == NULL && self->alive && PyLong_CheckExact(args[1])) {
        int overflow = 0;
        long long nbytes = PyLong_AsLongLongAndOverflow(args[1], &overflow);   /* an exact int: no error */
        Appender *appender = overflow == 0 && nbytes >= 0 && (unsigned long long)nbytes <= MAX_ENTRY
                             ? appender_for(self, args[0]) : NULL;
        if (appender != NULL)
            return Appender_slot(appender, args[1]);
    }
    return general(self, self->general_reserve, args, nargs, kwnames);
}

static PyObject *Dispatch_add_appender(Dispatch *self, PyObject *args)
{
    PyObject *topic, *appender;
    if (!PyArg_ParseTuple(args, "UO!", &topic, &AppenderType, &appender))
        return NULL;
    if (self->appenders == NULL)
        return PyErr_Format(PyExc_RuntimeError, "the Dispatch was cleared");
    if (PyDict_SetItem(self->appenders, topic, appender) < 0)
        return NULL;
    forget_last(self);
    Py_RETURN_NONE;
}

static PyObject *Dispatch_add_reader(Dispatch *self, PyObject *args)
{
    PyObject *topic, *group, *reader;
    if (!PyArg_ParseTuple(args, "UUO!", &topic, &group, &ReaderType, &reader))
        return NULL;
    if (self->readers == NULL)
        return PyErr_Format(PyExc_RuntimeError, "the Dispatch was cleared");
    PyObject *key = PyTuple_Pack(2, topic, group);
    if (key == NULL)
        return NULL;
    int rc = PyDict_SetItem(self->readers, key, reader);
    Py_DECREF(key);
    if (rc < 0)
        return NULL;
    forget_last(self);
    Py_RETURN_NONE;
}

static PyObject *Dispatch_forget_reader(Dispatch *self, PyObject *args)
{
    PyObject *topic, *group;
    if (!PyArg_ParseTuple(args, "UU", &topic, &group))
        return NULL;
    forget_last(self);
    if (self->readers == NULL)
        Py_RETURN_NONE;
    PyObject *key = PyTuple_Pack(2, topic, group);
    if (key == NULL)
        return NULL;
    int rc = PyDict_DelItem(self->readers, key);
    Py_DECREF(key);
    if (rc < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError))
            return NULL;
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

static PyObject *Dispatch_forget_all(Dispatch *self, PyObject *unused)
{
    forget_last(self);
    if (self->appenders != NULL)
        PyDict_Clear(self->appenders);
    if (self->readers != NULL)
        PyDict_Clear(self->readers);
    Py_RETURN_NONE;
}

static PyObject *Dispatch_handles(Dispatch *self, PyObject *unused)
{
    return Py_BuildValue("(OO)", self->appenders ? self->appenders : Py_None,
                         self->readers ? self->readers : Py_None);
}

static PyObject *Dispatch_get_alive(Dispatch *self, void *closure)
{
    return PyBool_FromLong(self->alive);
}

static int Dispatch_set_alive(Dispatch *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "alive cannot be deleted");
        return -1;
    }
    int alive = PyObject_IsTrue(value);
    if (alive < 0)
        return -1;
    self->alive = alive;
    return 0;
}

static PyMethodDef Dispatch_methods[] = {
    {"append", (PyCFunction)(void (*)(void))Dispatch_append, METH_FASTCALL | METH_KEYWORDS,
     "append($self, topic, data)\n--\n\nAppend one entry; return its offset. shmwal.Client.append, compiled "
     "(client/facade.py: help(shmwal.Client.append) has the whole contract)."},
    {"read_next", (PyCFunction)(void (*)(void))Dispatch_read_next, METH_FASTCALL | METH_KEYWORDS,
     "read_next($self, topic, *, group='default', checkpoint=True, timeout=0.0, zero_copy=False)\n--\n\n"
     "The group's next entry (an Entry), or None if none came in time. shmwal.Client.read_next, "
     "compiled (client/facade.py: help(shmwal.Client.read_next) has the whole contract)."},
    {"batch_read", (PyCFunction)(void (*)(void))Dispatch_batch_read, METH_FASTCALL | METH_KEYWORDS,
     "batch_read($self, topic, max_bytes, *, group='default', checkpoint=True, timeout=0.0, zero_copy=False)\n--\n\n"
     "The group's next entries (a list of Entry), up to max_bytes of payload. shmwal.Client.batch_read, "
     "compiled (client/facade.py: help(shmwal.Client.batch_read) has the whole contract)."},
    {"reserve", (PyCFunction)(void (*)(void))Dispatch_reserve, METH_FASTCALL | METH_KEYWORDS,
     "reserve($self, topic, nbytes)\n--\n\n"
     "A zero-copy write (API.md \"Zero-copy writes\"): the slot to fill, in a with block. shmwal.Client.reserve, "
     "compiled (client/facade.py: help(shmwal.Client.reserve) has the whole contract)."},
    {"add_appender", (PyCFunction)Dispatch_add_appender, METH_VARARGS,
     "add_appender(topic, appender): serve append(topic, ...) and reserve(topic, ...) with this hot.c Appender"},
    {"add_reader", (PyCFunction)Dispatch_add_reader, METH_VARARGS,
     "add_reader(topic, group, reader): serve read_next and batch_read of (topic, group) with this hot.c Reader"},
    {"forget_reader", (PyCFunction)Dispatch_forget_reader, METH_VARARGS, "forget_reader(topic, group)"},
    {"forget_all", (PyCFunction)Dispatch_forget_all, METH_NOARGS, "forget_all(): no handle is served any more"},
    {"handles", (PyCFunction)Dispatch_handles, METH_NOARGS, "handles() -> (appenders, readers): the dicts (tests)"},
    {NULL}
};

static PyGetSetDef Dispatch_getset[] = {
    {"alive", (getter)Dispatch_get_alive, (setter)Dispatch_set_alive,
     "the client's _alive: while False every call takes the Python method", NULL},
    {NULL}
};

static PyTypeObject DispatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmwal._hot.Dispatch",
    .tp_basicsize = sizeof(Dispatch),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Dispatch(client, append, read_next[, batch_read]): a Client's data calls, served in C (dispatch.h)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Dispatch_init,
    .tp_dealloc = (destructor)Dispatch_dealloc,
    .tp_traverse = (traverseproc)Dispatch_traverse,
    .tp_clear = (inquiry)Dispatch_clear,
    .tp_methods = Dispatch_methods,
    .tp_getset = Dispatch_getset,
};

static int dispatch_ready(PyObject *module)
{
    if (PyType_Ready(&DispatchType) < 0)
        return -1;
    if (str_group == NULL
            && ((str_group = PyUnicode_InternFromString("group")) == NULL
                || (str_checkpoint = PyUnicode_InternFromString("checkpoint")) == NULL
                || (str_timeout = PyUnicode_InternFromString("timeout")) == NULL
                || (str_zero_copy = PyUnicode_InternFromString("zero_copy")) == NULL
                || (str_default = PyUnicode_InternFromString("default")) == NULL))
        return -1;
    Py_INCREF(&DispatchType);
    if (PyModule_AddObject(module, "Dispatch", (PyObject *)&DispatchType) < 0) {
        Py_DECREF(&DispatchType);
        return -1;
    }
    return 0;
}
